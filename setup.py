"""The compiled XML record reader, batch/syntax/_xmlrows.pyx: the one part of the package that
is not pure Python. Everything else about the package is in pyproject.toml.

It is built when Cython and lxml's headers (pyproject's build requirements; the lxml wheel ships
them: lxml.get_include()) and a C compiler are there. Without a compiler, or when the compile
fails, the package installs without it and batch.syntax.xmlpaths.compiled_row_extractor answers
None: the Python extractor reads the records, the same values, ~2 us a record slower
(bench/bench_xmlrows.py).

    python3 setup.py build_ext --inplace      # in a checkout, to build it where it is
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing: the extension only makes reading faster."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - no compiler: distutils' errors are not one class
            print(f"warning: the compiled XML reader was not built ({exc}); the Python one is used", file=sys.stderr)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - as in run
            print(f"warning: {ext.name} was not built ({exc}); the Python reader is used", file=sys.stderr)


def extensions() -> list[Extension]:
    try:
        import lxml
        from Cython.Build import cythonize
    except ImportError as exc:
        print(f"warning: the compiled XML reader is not built ({exc})", file=sys.stderr)
        return []
    return cythonize(  # type: ignore[no-any-return]  # Cython ships no type hints
        [Extension("batch.syntax._xmlrows", ["batch/syntax/_xmlrows.pyx"], include_dirs=lxml.get_include())],
        language_level=3,
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
