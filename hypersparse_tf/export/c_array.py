"""Models as C arrays, the way boards take them."""

import contextlib
import os
import re
import tempfile

from hypersparse_tf.export import flatbuffer

_C_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def write_c_array(tflite_bytes, path, name):
    """Writes a model as a C++ array, the way boards take it.

    Writes `<path>.h`, declaring `extern const unsigned char <name>[];` and
    `extern const unsigned int <name>_len;` inside an include guard, and
    `<path>.cc`, defining `alignas(16) const unsigned char <name>[] = {...};`
    (TFLite Micro wants the model 16-byte aligned) and its length. Both files
    are written to temporary files first and renamed: on error, none is left.

    Args:
        tflite_bytes: Bytes. The model.
        path: Path without extension, e.g. `"src/model_data"`. Its directory
            must exist.
        name: String. A C identifier, the array's name, e.g. `"g_model"`.

    Returns:
        Tuple `(header_path, source_path)` of strings.

    Raises:
        ValueError: for a `name` that is not a C identifier.
        OSError: naming `path` if a file cannot be written.
    """
    tflite_bytes = flatbuffer.check_tflite_bytes(tflite_bytes)
    if not isinstance(name, str) or not _C_IDENTIFIER.match(name):
        raise ValueError(
            "Invalid value for argument `name`. Expected a C identifier (letters, "
            f"digits, underscores; not starting with a digit). Received: name={name!r}"
        )
    if not isinstance(path, str | os.PathLike) or not os.fspath(path):
        raise TypeError(
            "Invalid value for argument `path`. Expected a non-empty path "
            f"without extension. Received: path={path!r}"
        )
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise OSError(
            f"Invalid value for argument `path`: the directory {directory!r} does "
            f"not exist (or is not a directory). Received: path={path!r}"
        )
    header_path, source_path = f"{path}.h", f"{path}.cc"
    base = os.path.basename(path)
    guard = re.sub(r"[^A-Za-z0-9]", "_", base).upper() + "_H_"
    if not guard[0].isalpha():
        guard = "MODEL_" + guard
    length = len(tflite_bytes)
    header = (
        f"// TFLite model `{name}` ({length} bytes), written by "
        "hypersparse_tf.export.write_c_array.\n"
        f"#ifndef {guard}\n"
        f"#define {guard}\n\n"
        f"extern const unsigned char {name}[];\n"
        f"extern const unsigned int {name}_len;\n\n"
        f"#endif  // {guard}\n"
    )
    rows = []
    for start in range(0, length, 12):
        chunk = tflite_bytes[start : start + 12]
        rows.append("    " + ", ".join(f"0x{byte:02x}" for byte in chunk) + ",")
    source = (
        f'#include "{base}.h"\n\n'
        "// TFLite Micro reads the model in place: keep it 16-byte aligned.\n"
        f"alignas(16) const unsigned char {name}[] = {{\n" + "\n".join(rows) + "\n};\n"
        f"const unsigned int {name}_len = {length};\n"
    )
    _write_files({header_path: header, source_path: source}, path)
    return header_path, source_path


def _write_files(contents, argument_value):
    """Writes all files or none: temporary files first, then renames."""
    temporaries, renamed = {}, []
    try:
        for target, text in contents.items():
            handle, temporary = tempfile.mkstemp(
                prefix=".tmp-", dir=os.path.dirname(os.path.abspath(target))
            )
            temporaries[target] = temporary
            with os.fdopen(handle, "w") as f:
                f.write(text)
            # mkstemp makes the file private (0600); give it the permissions a
            # plain `open` would, under the process's umask.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)
        for target, temporary in temporaries.items():
            os.replace(temporary, target)
            renamed.append(target)
    except OSError as err:
        for leftover in [*temporaries.values(), *renamed]:
            with contextlib.suppress(OSError):
                os.remove(leftover)
        raise OSError(
            f"Invalid value for argument `path`: cannot write the C array files "
            f"for path={argument_value!r}: {err}"
        ) from err
