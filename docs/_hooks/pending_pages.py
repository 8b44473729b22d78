"""mkdocs hook: a page left out of the build by ``exclude_docs`` (mkdocs.yml) is left out of the navigation too.

mkdocs keeps a nav entry whose file is excluded as a link to nothing; this removes such entries (and fixes the
previous/next links around them), so that the API pages of names that do not exist yet can be switched off in one
place, ``exclude_docs``, without editing ``nav``.
"""

from __future__ import annotations

from typing import Any, List


def _keep(item: Any) -> bool:
    if item.is_page:
        return not item.file.inclusion.is_excluded()
    if item.is_section:
        item.children = [child for child in item.children if _keep(child)]
        return bool(item.children)
    return True


def on_nav(nav: Any, config: Any, files: Any) -> Any:
    nav.items = [item for item in nav.items if _keep(item)]
    pages: List[Any] = [page for page in nav.pages if not page.file.inclusion.is_excluded()]
    for i, page in enumerate(pages):
        page.previous_page = pages[i - 1] if i > 0 else None
        page.next_page = pages[i + 1] if i + 1 < len(pages) else None
    nav.pages = pages
    return nav
