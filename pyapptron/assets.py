"""Where the built assets are, and which images exist (pure Python but for fetching)."""

from __future__ import annotations

from . import _browser
from .errors import AssetsMissing, ImageNotFound

BUILD_HINT = "build them with `python emulators/build.py` (or `bash emulators/setup.sh`)"


class Assets:
    """The asset tree made by emulators/build.py, as served under one base URL."""

    def __init__(self, base_url: str, index: dict):
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.index = index

    @classmethod
    async def load(cls, base_url: str | None = None) -> Assets:
        base_url = base_url or _browser.default_assets_url()
        if not base_url:
            raise AssetsMissing(
                "no assets URL: pass boot(..., assets_url=...) or set globalThis.pyapptronAssetsUrl"
            )
        base = base_url if base_url.endswith("/") else base_url + "/"
        return cls(base, await _browser.fetch_json(base + "assets.json"))

    def url(self, path: str) -> str:
        return self.base_url + path

    def has(self, path: str) -> bool:
        return path in self.index.get("files", {})

    def require(self, path: str) -> str:
        if not self.has(path):
            raise AssetsMissing(f"asset {path!r} is not built; {BUILD_HINT}")
        return self.url(path)

    def sha256(self, path: str) -> str:
        """The built file's content hash (what a snapshot's binding names it by)."""
        self.require(path)
        return self.index["files"][path].get("sha256", "")

    def version(self, package: str) -> str | None:
        """The pinned npm version of an emulator package ("v86")."""
        return self.index.get("versions", {}).get("npm", {}).get(package)

    def images(self, emulator: str) -> list[str]:
        names = set()
        for path in self.index.get("files", {}):
            parts = path.split("/")
            if len(parts) == 3 and parts[0] == "images" and parts[2] == "image.json":
                names.add(parts[1])
        specs = self.index.get("images", {})
        return sorted(n for n in names if specs.get(n, {}).get("emulator", emulator) == emulator)

    async def image(self, emulator: str, name: str) -> dict:
        available = self.images(emulator)
        if name not in available:
            raise ImageNotFound(
                f"no image {name!r} for emulator {emulator!r}; available: "
                f"{', '.join(available) or 'none (' + BUILD_HINT + ')'}"
            )
        spec = await _browser.fetch_json(self.url(f"images/{name}/image.json"))
        spec.setdefault("name", name)
        return spec
