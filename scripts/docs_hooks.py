"""MkDocs hook: code blocks marked `no-run` (```python no-run, ```console no-run) are shown
only, never run by tests/test_docs.py. The marker is dropped before Markdown sees the
block, since fenced-code extensions do not take a bare word with a dash after the language."""

import re

NO_RUN = re.compile(r"^(?P<fence>\s*`{3,}\s*[\w+-]+)\s+no-run\s*$", re.MULTILINE)


def on_page_markdown(markdown: str, **kwargs: object) -> str:
    return NO_RUN.sub(r"\g<fence>", markdown)
