#!/usr/bin/env python3
"""Rewrite tessera's CUDA sources (cuda/*.cu, *.cuh, *.hpp, *.cpp) into g++-compilable C++ for the CPU emulation.

  transform.py SRC_DIR DST_DIR

*.cu -> *.cpp with `#include "cuda_emu.hpp"` first and every `kernel<<<grid, block[, smem[, stream]]>>>(args);`
replaced by `emu::launch(dim3(grid), dim3(block), smem, [&] { kernel(args); });` (whitespace, including a line
break, may stand between the kernel name and <<<). In all files `__shared__` becomes `static` (one copy per
kernel instantiation; blocks run one at a time) and `extern __shared__ T x[];` becomes a pointer into
emu::smem. Other files are copied unchanged so that quoted includes resolve inside DST_DIR.
"""
import os
import re
import sys


def split_top(s, sep=','):
    """Split s at top-level separators (outside (), <>, {}, [])."""
    parts, depth, cur = [], 0, ''
    for c in s:
        if c in '(<{[':
            depth += 1
        elif c in ')>}]':
            depth -= 1
        if c == sep and depth == 0:
            parts.append(cur)
            cur = ''
        else:
            cur += c
    parts.append(cur)
    return parts


def matching(s, i, open_c, close_c):
    """Index of the bracket closing the one at s[i]."""
    depth = 0
    while i < len(s):
        if s[i] == open_c:
            depth += 1
        elif s[i] == close_c:
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError('unbalanced %s%s' % (open_c, close_c))


def rewrite_launches(s, name):
    out, i = [], 0
    while True:
        j = s.find('<<<', i)
        if j < 0:
            out.append(s[i:])
            return ''.join(out)
        # The kernel expression ends before <<< (after optional whitespace) and runs back over identifier
        # characters, '::' and balanced template brackets.
        kend = j
        while s[kend - 1].isspace():
            kend -= 1
        k, depth = kend, 0
        while k > 0:
            c = s[k - 1]
            if c == '>':
                depth += 1
            elif c == '<':
                depth -= 1
            elif depth == 0 and not (c.isalnum() or c in '_:'):
                break
            k -= 1
        kern = s[k:kend].strip()
        if not kern:
            raise SystemExit('%s: cannot find the kernel before <<< at offset %d' % (name, j))
        e = s.find('>>>', j)
        cfg = split_top(s[j + 3:e])
        if not 2 <= len(cfg) <= 4:
            raise SystemExit('%s: launch config <<<%s>>> not understood' % (name, s[j + 3:e]))
        while len(cfg) < 3:
            cfg.append('0')
        a0 = s.index('(', e)
        if s[e + 3:a0].strip():
            raise SystemExit('%s: unexpected text between >>> and ( at offset %d' % (name, e))
        a1 = matching(s, a0, '(', ')')
        args = s[a0 + 1:a1]
        semi = s.index(';', a1)
        out.append(s[i:k])
        out.append('emu::launch(dim3(%s), dim3(%s), %s, [&] { %s(%s); })'
                   % (cfg[0].strip(), cfg[1].strip(), cfg[2].strip(), kern, args))
        i = semi


def rewrite_shared(s):
    s = re.sub(r'extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w:]+)\s+(\w+)\s*\[\s*\]\s*;',
               r'\1* \2 = reinterpret_cast<\1*>(emu::smem.data());', s)
    return re.sub(r'\b__shared__\s+', 'static ', s)


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    os.makedirs(dst, exist_ok=True)
    for f in sorted(os.listdir(src)):
        if not f.endswith(('.cu', '.cuh', '.hpp', '.h', '.cpp')):
            continue
        s = open(os.path.join(src, f)).read()
        if f.endswith(('.cu', '.cuh')):
            s = rewrite_shared(s)
        if f.endswith('.cuh') and '<<<' in s:  # launch code shared between .cu files
            s = rewrite_launches(s, f)
        if f.endswith('.cu'):
            s = '#include "cuda_emu.hpp"\n#line 1 "%s"\n' % os.path.join(src, f) + rewrite_launches(s, f)
            f = f[:-3] + '.cpp'
        path = os.path.join(dst, f)
        old = open(path).read() if os.path.exists(path) else None
        if old != s:  # keep timestamps of unchanged files, so make-style rebuild checks stay cheap
            open(path, 'w').write(s)


if __name__ == '__main__':
    main()
