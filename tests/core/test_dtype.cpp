#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "tessera/core/dtype.hpp"

using namespace tessera;

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(bf16(1.0f).bits, 0x3f80);
  EXPECT_EQ(static_cast<float>(bf16(1.0f)), 1.0f);
  // 1 + 2^-8 is exactly halfway between bf16 1.0 and 1.0078125: ties go to even (1.0).
  EXPECT_EQ(static_cast<float>(bf16(1.0f + 0x1.0p-8f)), 1.0f);
  // 1 + 3*2^-8 is halfway between 1.0078125 (odd) and 1.015625 (even): rounds up.
  EXPECT_EQ(static_cast<float>(bf16(1.0f + 3 * 0x1.0p-8f)), 1.015625f);
  EXPECT_EQ(static_cast<float>(bf16(-2.5f)), -2.5f);
  EXPECT_TRUE(std::isnan(static_cast<float>(bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isinf(static_cast<float>(bf16(std::numeric_limits<float>::infinity()))));
}

TEST(DType, HalfRoundTrip) {
  for (float f : {0.0f, 1.0f, -1.5f, 65504.0f, 0.000061035156f, 5.9604645e-08f, 0.333251953125f})
    EXPECT_EQ(half_to_float(float_to_half(f)), f) << f;
  EXPECT_EQ(float_to_half(1.0f), 0x3c00);
  EXPECT_EQ(float_to_half(-2.0f), 0xc000);
  EXPECT_EQ(float_to_half(1e6f), 0x7c00);            // overflow -> inf
  EXPECT_EQ(half_to_float(0x0001), 5.9604645e-08f);  // smallest subnormal
  EXPECT_EQ(float_to_half(1.0f + 0x1.0p-11f), 0x3c00);  // tie -> even
  EXPECT_TRUE(std::isnan(half_to_float(float_to_half(std::nanf("")))));
  // Every half bit pattern that is finite round-trips exactly through f32.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if (((h >> 10) & 0x1f) == 0x1f) continue;
    ASSERT_EQ(float_to_half(half_to_float(static_cast<uint16_t>(h))), h) << h;
  }
}

TEST(DType, NamesAndSizes) {
  EXPECT_EQ(dtype_from_name("BF16"), DType::BF16);
  EXPECT_EQ(dtype_size(DType::I64), 8u);
  EXPECT_EQ(dtype_name(DType::BOOL), "BOOL");
  EXPECT_THROW(dtype_from_name("F8_E4M3"), Error);
}
