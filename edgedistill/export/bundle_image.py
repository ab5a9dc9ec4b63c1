"""The image part of a bundle's ``example.py`` (joined with the shared helpers by
:mod:`.bundle_examples`): pictures and pixel arrays become uint8 [N, C, H, W] exactly as in
training, and anything that is not plainly 0..255 pixels is refused in one line.

Why so strict: a float array in [0, 1], uint16 values or NaN used to be classified as if they
were pixels, so every prediction became one class. A float or 16-bit array is converted only
when the user says how (``--scale 255``, ``--scale 255/65535``), never guessed, and the scaled
values must still lie in 0..255.
"""

from __future__ import annotations

IMAGE = r'''

PICTURES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
AXES = ("image", "channel", "row", "column")  # of a [N, C, H, W] batch, for error messages


def parse_scale(text):
    """``--scale`` "255", "1" or "255/65535" -> a positive factor (None when not given)."""
    if text is None:
        return None
    top, _, bottom = text.partition("/")
    try:
        value = float(top) / float(bottom or "1")
    except (ValueError, ZeroDivisionError):
        value = float("nan")
    if not np.isfinite(value) or value <= 0:
        fail(f"--scale {text}: expected a positive number such as 255 or 255/65535")
    return value


def read_array(path):
    """The pixel array of a .npy file, or the array named 'images' of a .npz file."""
    data = load_numpy(path)
    if not isinstance(data, np.ndarray):
        if "images" not in data.files:
            fail(f"{path.name}: holds {data.files}; expected an array named 'images'")
        try:
            data = data["images"]
        except Exception as exc:  # an object array or a damaged member
            what = "holds Python objects" if "allow_pickle" in str(exc) else f"is damaged ({exc})"
            fail(f"{path.name}: its 'images' array {what}; save uint8 pixels with np.savez")
    if not numeric(data):
        fail(f"{path.name}: holds {data.dtype} values, not numbers; the model wants uint8 pixels")
    if data.size == 0:
        fail(f"{path.name}: the batch is empty (shape {list(data.shape)}); give at least one image")
    return data


def to_batch(array, name):
    """[N, C, H, W] from [N, C, H, W], [N, H, W, C], [N, H, W], [C, H, W], [H, W, C] or [H, W]
    (whatever the dtype; the values are checked afterwards)."""
    c, h, w = SPEC["shape"][1:]
    s = tuple(array.shape)
    if array.ndim == 4 and s[1:] == (c, h, w):
        return array
    if array.ndim == 4 and s[1:] == (h, w, c):
        return array.transpose(0, 3, 1, 2)
    if array.ndim == 3 and c == 1 and s[1:] == (h, w):
        return array[:, None]
    if array.ndim == 3 and s in ((c, h, w), (h, w, c)):
        return array[None] if s == (c, h, w) else array.transpose(2, 0, 1)[None]
    if array.ndim == 2 and c == 1 and s == (h, w):
        return array[None, None]
    forms = f"[N, {h}, {w}] or [{h}, {w}]" if c == 1 else f"[N, {h}, {w}, {c}] or [{h}, {w}, {c}]"
    fail(
        f"{name}: shape {list(s)} does not fit the model's {h}x{w} {SPEC['color']} images; "
        f"expected uint8 [N, {c}, {h}, {w}], {forms}"
    )


def not_pixels(images):
    """Why ``images`` (not uint8) are not taken as they are, and what to pass instead."""
    kind, low, high = images.dtype, images.min(), images.max()
    if np.issubdtype(kind, np.floating) and 0 <= low and high <= 1:
        return (
            f"holds {kind} values in 0..1 (the usual mistake); the model wants uint8 pixels "
            "0..255: pass --scale 255, or save (x * 255).round().astype(np.uint8)"
        )
    if kind == np.uint16:
        return (
            f"holds uint16 values (up to {high}); the model wants uint8 pixels 0..255: pass "
            "--scale 255/65535 for 16-bit images (255/4095 for 12-bit ones)"
        )
    if 0 <= low and high <= 255:
        return (
            f"holds {kind} values in 0..255; the model wants uint8 pixels: pass --scale 1, "
            "or save x.astype(np.uint8)"
        )
    return f"holds {kind} values in {low:g}..{high:g}, not uint8 pixels 0..255"


def to_pixels(images, name, scale):
    """uint8 [N, C, H, W] from a batch: uint8 as it is; other values only times ``--scale``,
    rounded, and only when the result lies in 0..255 (the trained range)."""
    if np.issubdtype(images.dtype, np.floating):
        refuse_non_finite(images, name, AXES)
    if scale is None:
        if images.dtype != np.uint8:
            fail(f"{name}: {not_pixels(images)}")
        return images
    values = images.astype(np.float64) * scale
    low, high = values.min(), values.max()
    if low < -0.5 or high > 255.5:
        fail(
            f"{name}: {images.dtype} values times --scale {scale:g} span {low:g}..{high:g}, "
            "outside the model's uint8 pixels 0..255; check the scale"
        )
    if scale != 1 or images.dtype != np.uint8:
        note(f"took {images.dtype} values times {scale:g} as uint8 pixels 0..255 (--scale)")
    return np.round(values).astype(np.uint8)


def read_picture(path):
    """[1, C, H, W] uint8 from an 8-bit image file, converted and resized like the training
    data (16-bit and float pictures are refused: Pillow would clip them to 255)."""
    try:
        from PIL import Image
    except ImportError:
        fail(f"reading {path.suffix} files needs Pillow (pip install pillow); or pass uint8 .npy")
    c, h, w = SPEC["shape"][1:]
    if c not in (1, 3):
        fail(f"{path.name}: the model takes {c}-channel images; pass uint8 .npy")
    mode = "L" if c == 1 else "RGB"
    try:
        with Image.open(path) as picture:
            original = picture.mode
            if original.startswith(("I", "F")):  # 16/32-bit integer or float pixels
                fail(
                    f"{path.name}: a mode {original} (16/32-bit) image; the model was trained "
                    "on 8-bit pixels: save it as 8-bit, or pass its pixels as .npy with --scale"
                )
            image = picture.convert(mode)
    except Exception as exc:  # fail() raises SystemExit, which passes through
        fail(f"{path.name}: cannot read the image ({exc})")
    if original != mode:
        note(f"converted the {original} image to {SPEC['color']}, the model's colour")
    if image.size != (w, h):
        size = f"{image.size[1]}x{image.size[0]}"
        note(f"resized {size} -> {h}x{w} (HxW, bilinear), the model's size")
        image = image.resize((w, h), getattr(Image, "Resampling", Image).BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None, None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)[None]


def main():
    p = parser("Classify images.")
    p.add_argument("images", nargs="?", help=".npy/.npz uint8 pixels or an image file")
    p.add_argument(
        "--scale",
        help="take a non-uint8 array times this as pixels 0..255: 255 for floats in 0..1, "
        "255/65535 for uint16, 1 for floats or integers already in 0..255",
    )
    args = parse(p)
    scale = parse_scale(args.scale)
    if args.images is None:
        path, truth = bundled_sample()
    else:
        path, truth = input_file(args.images), None
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        batch = to_batch(read_array(path), path.name)
        images = to_pixels(batch, path.name, scale)
    elif suffix in PICTURES:
        if scale is not None:
            fail(f"--scale is for .npy/.npz arrays; {path.name} is read as 8-bit pixels")
        images = read_picture(path)
    else:
        fail(f"{path.name}: expected uint8 pixels in a .npy/.npz file or a .png/.jpg image")
    show(args.model, run_model(args.model, prepare(images)), truth)
'''
"""The image classifier: .npy/.npz pixel arrays (``--scale`` for non-uint8) or pictures."""
