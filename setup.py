"""The optional compiled XML record reader (PROTOTYPE, issue 9): batch/syntax/_xmlrows.pyx.

Everything else about the package is in pyproject.toml. The extension is built when Cython,
lxml's headers (shipped in the lxml wheel: lxml.get_include()) and a C compiler are there; when
any of them is missing, or the compile fails, the package installs without it and
batch.syntax.xmlpaths.compiled_row_extractor answers None (the Python extractor reads the
records: the same values, ~2 us a record slower).

    python3 setup.py build_ext --inplace      # in a checkout
"""

from __future__ import annotations

import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing: the extension only makes reading faster."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler (distutils' errors are not one class)
            print(f"warning: the compiled XML reader was not built ({exc}); the Python one is used", file=sys.stderr)

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"warning: {ext.name} was not built ({exc}); the Python reader is used", file=sys.stderr)


def extensions() -> list:
    try:
        import lxml
        from Cython.Build import cythonize
    except ImportError as exc:
        print(f"warning: the compiled XML reader is not built ({exc})", file=sys.stderr)
        return []
    from setuptools import Extension

    return cythonize(
        [Extension("batch.syntax._xmlrows", ["batch/syntax/_xmlrows.pyx"], include_dirs=lxml.get_include())],
        language_level=3,
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
