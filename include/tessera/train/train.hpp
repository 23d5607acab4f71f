// Train module: AdamW, lr schedules, gradient clipping, byte corpora and loaders, checkpoints, the trainer
// loop.
#pragma once
#include "tessera/train/adamw.hpp"
#include "tessera/train/byte_loader.hpp"
#include "tessera/train/checkpoint.hpp"
#include "tessera/train/clip.hpp"
#include "tessera/train/schedule.hpp"
#include "tessera/train/text_corpus.hpp"
#include "tessera/train/trainer.hpp"
