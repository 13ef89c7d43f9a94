"""Fake ament_index_python.packages: tests register a share directory per package."""

from __future__ import annotations

SHARE_DIRS: dict[str, str] = {}


class PackageNotFoundError(KeyError):
    pass


def get_package_share_directory(package_name: str, print_warning: bool = True) -> str:
    if package_name not in SHARE_DIRS:
        raise PackageNotFoundError(f"package '{package_name}' not found")
    return SHARE_DIRS[package_name]
