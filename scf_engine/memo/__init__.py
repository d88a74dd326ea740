"""Credit memos (授信评审备忘录): one per scored firm, as printable HTML, PDF and Markdown.

See :mod:`.render` for the context a memo takes (``render_memo(ctx, out_dir)``) and the
masking of counterparty identifiers.
"""

from scf_engine.memo.render import (CONTEXT_KEYS, chain_position, check_context, firm_record, mask_id,
                                    neighbourhood_png, render_html, render_markdown, render_memo, scrub, view)

__all__ = ["CONTEXT_KEYS", "chain_position", "check_context", "firm_record", "mask_id", "neighbourhood_png",
           "render_html", "render_markdown", "render_memo", "scrub", "view"]
