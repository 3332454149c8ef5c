"""Build hook: ship `mobileclip2-autoload.pth` into site-packages.

Metadata lives in setup.cfg. This file exists only because a ``.pth`` file must sit at the
root of site-packages, which no declarative setuptools option can express. The same file is
written for regular wheels (into ``build_lib``, copied verbatim into the wheel root) and for
PEP 660 editable wheels (into the unpacked editable wheel, whose root is ``install_lib``).
"""

import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

PTH_NAME = "mobileclip2-autoload.pth"
# One line, executed by `site` at interpreter start. It imports only a tiny module that arms
# a post-import hook; torch/open_clip are not imported here. The try/except keeps every Python
# start silent when the package's files are gone but the .pth is not (an editable install whose
# checkout was deleted, a half-finished uninstall) instead of printing a traceback; any other
# error still shows. exec() because `site` runs one line, and a guard through importlib.util
# would import it (and contextlib, functools) on every start: ~4 ms.
PTH_LINE = (
    'import sys; exec("try:\\n import mobileclip2._autoload\\n'
    "except ModuleNotFoundError as error:\\n"
    " if not (error.name or '').startswith('mobileclip2'): raise\\n\")\n"
)


class BuildPyWithAutoloadPth(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            target_dir = self.get_finalized_command("install").install_lib
        else:
            target_dir = self.build_lib
        os.makedirs(target_dir, exist_ok=True)
        self._pth_path = os.path.join(target_dir, PTH_NAME)
        with open(self._pth_path, "w", encoding="utf-8") as handle:
            handle.write(PTH_LINE)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            outputs.append(os.path.join(self.build_lib, PTH_NAME))
        return outputs


# model_configs/ is a top-level folder of the checkout (the single source of the architecture JSONs)
# installed as the package mobileclip2.model_configs, in wheels and editable installs alike.
PACKAGES = find_packages(include=["mobileclip2", "mobileclip2.*"]) + ["mobileclip2.model_configs"]
PACKAGE_DIR = {"mobileclip2.model_configs": "model_configs"}

setup(packages=PACKAGES, package_dir=PACKAGE_DIR, cmdclass={"build_py": BuildPyWithAutoloadPth})
