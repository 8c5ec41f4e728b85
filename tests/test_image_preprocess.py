#!/usr/bin/env python3
"""GLM-4V image preprocessing against Pillow (issue 23, item 2; core/image.c, docs/VISION.md).

For generated photo-like images (gradients, shapes, texture, noise) of several sizes, aspect ratios
and modes — RGB, L, 1-bit, LA, P with and without tRNS, RGBA, 2/4-bit grey, 16-bit grey, 16-bit RGB,
RGBA and LA, interlaced PNG, JPEG 4:2:0 / 4:2:2 / 4:4:4, greyscale and progressive JPEG — upscaled,
downscaled, one axis unchanged and not resized at all, `mtok image --preprocessed` must equal

    Image.open(f).convert("RGB").resize((S, S), Image.BICUBIC) -> /255 -> (x - mean) / std   (float32)

exactly: the 8-bit values recovered from mtok's output equal Pillow's byte for byte, and the floats
equal the float32 normalisation of Pillow's bytes. Bad inputs (non-image, empty, truncated PNG and
JPEG, a corrupt PNG chunk, huge dimensions in a PNG and a JPEG header, GIF, CMYK JPEG, a missing
file) and bad options must fail with exit 2 or 1 and a message naming the problem.
Needs numpy and Pillow (exit 77 without them)."""
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib

from harness import args, numpy_or_skip

np = numpy_or_skip()
try:
    from PIL import Image
except ImportError:
    print("Pillow missing: skipped")
    sys.exit(77)

a = args()
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
bad = []
passed = 0


def check(ok, what):
    global passed
    print(("ok   " if ok else "FAIL ") + what)
    if ok:
        passed += 1
    else:
        bad.append(what)


def run(*cmd):
    return subprocess.run([a.mtok, "image", *cmd], capture_output=True, text=True, timeout=120)


def photo(w, h, seed):
    """A photo-like RGB image: smooth gradients, a few hard-edged shapes, fine texture, mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1), 128 + 100 * np.sin(x / 7.0 + y / 11.0)], -1)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(1, max(w, h, 6) / 3)
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += (30 * np.sin(x * 1.3) * np.cos(y * 0.9))[:, :, None] + rng.normal(0, 8, (h, w, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ---- a minimal PNG writer for what Pillow cannot save (16-bit RGB(A)/LA, 2/4-bit grey, Adam7) ----
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def pack_rows(arr, depth):
    """arr [h][w][ch] (uint8 or uint16 samples) -> list of row bytes at the bit depth."""
    rows = []
    for r in arr:
        if depth == 16:
            rows.append(r.astype(">u2").tobytes())
        elif depth == 8:
            rows.append(r.astype(np.uint8).tobytes())
        else:  # grey below 8 bits: big-endian bit packing, leftmost pixel in the high bits
            per = 8 // depth
            v = r[:, 0].astype(np.uint32)
            v = np.concatenate([v, np.zeros((-len(v)) % per, np.uint32)]).reshape(-1, per)
            rows.append(bytes(int(sum(int(p) << (8 - depth * (i + 1)) for i, p in enumerate(g))) for g in v))
    return rows


def png_bytes(arr, ctype, depth, interlace=False):
    h, w = arr.shape[:2]
    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 1 if interlace else 0)
    raw = b""
    passes = ADAM7 if interlace else [(0, 0, 1, 1)]
    for x0, y0, dx, dy in passes:
        sub = arr[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        raw += b"".join(b"\x00" + r for r in pack_rows(sub, depth))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


# ---- the oracle comparison ----
def compare(path, size, what):
    out = os.path.join(tmp, "out.npy")
    r = run("--size", str(size), "--image", path, "--out", out, "--preprocessed")
    if r.returncode != 0:
        check(False, f"{what}: mtok failed: {r.stderr.strip()}")
        return
    got = np.load(out)
    with Image.open(path) as im:
        mode, src_size = im.mode, im.size
        ref = np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC))
    exp = ((ref.astype(np.float32) / np.float32(255) - MEAN) / STD).transpose(2, 0, 1)
    u8 = np.rint((got.astype(np.float64) * STD[:, None, None] + MEAN[:, None, None]) * 255).astype(np.int64)
    steps = np.abs(u8 - ref.transpose(2, 0, 1).astype(np.int64)).max()
    fdiff = float(np.abs(got - exp).max())
    check(got.shape == (3, size, size) and got.dtype == np.float32 and steps == 0 and fdiff <= 1e-6,
          f"{what}: {mode} {src_size[0]}x{src_size[1]} -> {size}: 8-bit steps off {steps}, float diff {fdiff:.2e}")


tmp = tempfile.mkdtemp(prefix="mtok_img_")
cases = 0


def save(img, name, fmt, **kw):
    p = os.path.join(tmp, name)
    img.save(p, fmt, **kw)
    return p


def write(name, data):
    p = os.path.join(tmp, name)
    with open(p, "wb") as f:
        f.write(data)
    return p


# sizes and aspect ratios: downscale by large and fractional factors, upscale, extreme aspect ratios,
# one axis unchanged (one pass only), no change at all (a copy)
for (w, h, S, seed) in [(640, 480, 56, 1), (53, 37, 28, 2), (20, 30, 56, 3), (1000, 100, 42, 4), (7, 300, 28, 5),
                        (56, 300, 56, 6), (300, 56, 56, 7), (56, 56, 56, 8), (1, 1, 14, 9), (333, 333, 112, 10)]:
    compare(save(Image.fromarray(photo(w, h, seed)), f"rgb_{w}x{h}.png", "PNG"), S, f"RGB PNG {w}x{h}")

base = photo(241, 163, 11)
img = Image.fromarray(base)
compare(save(img.convert("L"), "l.png", "PNG"), 56, "grey PNG")
compare(save(img.convert("1"), "bw.png", "PNG"), 56, "1-bit PNG")
compare(save(img.convert("LA"), "la.png", "PNG"), 56, "grey+alpha PNG")
rgba = np.dstack([base, photo(241, 163, 12)[:, :, 0]])
compare(save(Image.fromarray(rgba, "RGBA"), "rgba.png", "PNG"), 56, "RGBA PNG (alpha dropped, not composited)")
compare(save(img.convert("P", palette=Image.ADAPTIVE, colors=200), "p.png", "PNG"), 70, "palette PNG")
pt = img.convert("P", palette=Image.ADAPTIVE, colors=16)
compare(save(pt, "p_trns.png", "PNG", transparency=3), 70, "palette PNG with tRNS (4-bit)")
grey = base[:, :, 1]
for depth in (2, 4):
    q = (grey >> (8 - depth)).reshape(163, 241, 1)
    compare(write(f"g{depth}.png", png_bytes(q, 0, depth)), 56, f"{depth}-bit grey PNG")
g16 = (photo(97, 61, 13)[:, :, 0].astype(np.uint16) * 3).reshape(61, 97, 1)  # up to 765: PIL clips at 255
compare(write("g16.png", png_bytes(g16, 0, 16)), 28, "16-bit grey PNG (values above 255 clip)")
w16 = np.minimum(photo(97, 61, 14).astype(np.uint32) * 257 + 100, 65535)  # low bytes not a copy of the high
compare(write("rgb16.png", png_bytes(w16, 2, 16)), 28, "16-bit RGB PNG (high bytes)")
rgba16 = np.dstack([w16, (w16[:, :, :1] * 7) % 65536]).astype(np.uint16)
compare(write("rgba16.png", png_bytes(rgba16, 6, 16)), 28, "16-bit RGBA PNG")
compare(write("la16.png", png_bytes(rgba16[:, :, [0, 3]], 4, 16)), 28, "16-bit grey+alpha PNG (high bytes)")
compare(write("adam7.png", png_bytes(photo(45, 29, 15), 2, 8, interlace=True)), 42, "interlaced (Adam7) RGB PNG")

jp = Image.fromarray(photo(320, 200, 16))
compare(save(jp, "q75.jpg", "JPEG", quality=75), 56, "JPEG 4:2:0 q75")
compare(save(jp, "q95_444.jpg", "JPEG", quality=95, subsampling=0), 112, "JPEG 4:4:4 q95 (upscale)")
compare(save(jp, "422.jpg", "JPEG", quality=85, subsampling=1), 70, "JPEG 4:2:2")
compare(save(jp, "prog.jpg", "JPEG", quality=80, progressive=True), 56, "progressive JPEG")
compare(save(jp.convert("L"), "grey.jpg", "JPEG", quality=90), 56, "greyscale JPEG")
compare(save(Image.fromarray(photo(33, 517, 17)), "odd.jpg", "JPEG", quality=70), 28, "JPEG with odd sizes")


# ---- bad inputs: exit 2 and a message that names the problem ----
def expect_fail(path, code, words, what, extra=("--size", "28", "--preprocessed")):
    r = run("--image", path, "--out", os.path.join(tmp, "bad.npy"), *extra)
    msg = r.stderr.strip()
    check(r.returncode == code and all(wd.lower() in msg.lower() for wd in words) and "Traceback" not in msg,
          f"{what}: exit {r.returncode} (want {code}), message {msg!r}")


png = open(save(img, "ok.png", "PNG"), "rb").read()
jpg = open(save(jp, "ok.jpg", "JPEG"), "rb").read()
expect_fail(write("text.png", b"hello, this is not an image\n" * 10), 2, ["not a PNG or JPEG"], "non-image")
expect_fail(write("empty.png", b""), 2, ["empty"], "empty file")
expect_fail(write("trunc.png", png[: len(png) // 2]), 2, ["truncated PNG"], "truncated PNG")
expect_fail(write("trunc8.png", png[:8]), 2, ["truncated PNG"], "PNG signature only")
expect_fail(write("trunc.jpg", jpg[: len(jpg) // 2]), 2, ["truncated JPEG"], "truncated JPEG")
expect_fail(write("trunc3.jpg", jpg[:3]), 2, ["JPEG"], "JPEG marker only")
corrupt = bytearray(png)
idat = corrupt.find(b"IDAT")
corrupt[idat + 20] ^= 0xFF
expect_fail(write("crc.png", bytes(corrupt)), 2, ["corrupt PNG"], "PNG with a damaged IDAT (CRC)")
huge = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)) + \
    chunk(b"IEND", b"")
expect_fail(write("huge.png", huge), 2, ["100000 x 100000", "limit"], "PNG header of 100000 x 100000")
hj = bytearray(jpg)
sof = hj.find(b"\xff\xc0")
hj[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
expect_fail(write("huge.jpg", bytes(hj)), 2, ["60000 x 60000", "limit"], "JPEG header of 60000 x 60000")
expect_fail(save(img, "x.gif", "GIF"), 2, ["GIF", "not supported"], "GIF")
expect_fail(save(jp.convert("CMYK"), "cmyk.jpg", "JPEG"), 2, ["CMYK", "unsupported"], "CMYK JPEG")
expect_fail(os.path.join(tmp, "missing.png"), 2, ["cannot open"], "missing file")

# ---- options ----
good = os.path.join(tmp, "ok.png")
out = os.path.join(tmp, "o.npy")
for argv, want, what in [
        (["--out", out, "--size", "28", "--preprocessed"], "--image", "no --image"),
        (["--image", good, "--size", "28", "--preprocessed"], "--out", "no --out"),
        (["--image", good, "--out", out, "--size", "28"], "--preprocessed", "--size without --preprocessed"),
        (["--image", good, "--out", out, "--size", "0", "--preprocessed"], "--size", "--size 0"),
        (["--image", good, "--out", out, "--size", "abc", "--preprocessed"], "--size", "--size abc"),
        (["--image", good, "--out", out, "--preprocessed"], "-m DIR or --size", "neither -m nor --size"),
        (["--image", good, "--out", out], "-m DIR", "no model for the tower"),
        (["--image", good, "--out", out, "--bogus"], "--bogus", "unknown option"),
        # preprocessing runs on the host: a device is refused (by the parser in a build without CUDA, else
        # by image itself), not silently ignored
        (["--image", good, "--out", out, "--size", "28", "--preprocessed", "--device", "cuda"], "--device",
         "--device cuda"),
        (["--image", good, "--out", out, "-m", tmp, "--size", "28", "--preprocessed"], "not both", "-m and --size")]:
    r = run(*argv)
    check(r.returncode == 1 and want in r.stderr, f"options: {what}: exit {r.returncode}, {r.stderr.strip()!r}")

# -m DIR --preprocessed takes the size from vision_config; a config without one is refused
mdir = os.path.join(tmp, "model")
os.makedirs(mdir)
vc = {"hidden_size": 32, "num_hidden_layers": 1, "num_heads": 2, "intermediate_size": 64, "hidden_act": "gelu",
      "patch_size": 7, "image_size": 42, "in_channels": 3, "num_positions": 37, "layer_norm_eps": 1e-6,
      "scaling_factor": 8}
with open(os.path.join(mdir, "config.json"), "w") as f:
    json.dump({"hidden_size": 64, "ffn_hidden_size": 96, "boi_token_id": 151339, "eoi_token_id": 151340,
               "vision_config": vc}, f)
r = run("-m", mdir, "--image", good, "--out", out, "--preprocessed")
check(r.returncode == 0 and np.load(out).shape == (3, 42, 42), f"-m DIR --preprocessed uses image_size 42: {r.stderr}")
with open(os.path.join(mdir, "config.json"), "w") as f:
    json.dump({"hidden_size": 64}, f)
r = run("-m", mdir, "--image", good, "--out", out, "--preprocessed")
check(r.returncode == 2 and "vision_config" in r.stderr, f"config without vision_config: {r.stderr.strip()!r}")
r = run("--image", good, "--out", os.path.join(tmp, "no", "such", "dir.npy"), "--size", "14", "--preprocessed")
check(r.returncode != 0 and "dir.npy" in r.stderr, f"unwritable --out: exit {r.returncode}, {r.stderr.strip()!r}")

print(f"{passed} passed, {len(bad)} failed")
sys.exit(1 if bad else 0)
