"""Hatch build hook: a standard (non-editable) wheel carries the built web console.

``ui/dist`` (made by ``scripts/build-ui.sh``) goes into the wheel as ``nexus/manager/ui``,
where the manager looks first (``Settings.resolved_ui_dir``). An editable install, or a build
before the console was built, ships none: the manager then serves the source tree's build or
says at ``/`` how to make one. ``make dist`` refuses to build without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        dist = Path(self.root) / "ui" / "dist"
        if (
            self.target_name == "wheel"
            and version == "standard"
            and (dist / "index.html").is_file()
        ):
            build_data["force_include"][str(dist)] = "nexus/manager/ui"
