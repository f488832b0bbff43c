"""The taxonomy page (taxonomy/index.md) with its diagram, from site/templates/taxonomy.md.j2."""
from __future__ import annotations

import re
from pathlib import Path

from jinja2 import Environment

from peftkb.model import Category
from peftkb.site.escape import mermaid_label
from peftkb.site.model import SiteModel
from peftkb.site.templating import render_template


def render(env: Environment, model: SiteModel, root: Path) -> dict[str, str]:
    return {"taxonomy/index.md": render_template(env, "taxonomy.md.j2", "taxonomy/index.md",
                                                 taxonomy_mermaid=taxonomy_mermaid(model), model=model,
                                                 catalog=model.catalog)}


def taxonomy_mermaid(model: SiteModel) -> str:
    """The survey's category tree as a left-to-right mermaid flowchart, coloured by top-level category.

    Two levels of boxes: a subcategory's own subcategories are lines inside its box (a third column of
    boxes made mermaid route edges through other boxes). Methods filed directly under a category get a
    dashed box of their own, so every box's count is the sum of its children's.
    """
    def node_id(cid: str) -> str:
        return "c_" + re.sub(r"[^a-z0-9]", "_", cid)

    def label(c: Category) -> str:
        return mermaid_label(f"{c.name} · {len(model.subtree_methods(c.id))}")

    lines = ["graph LR", '  root(["PEFT methods"])']
    styles: list[str] = []
    for top in model.roots:
        if not top.survey:
            continue
        colour = model.colour(top.id)
        lines.append(f'  {node_id(top.id)}(["{label(top)}"])')
        lines.append(f"  root --> {node_id(top.id)}")
        # translucent fills: the label colour comes from the light or dark theme, so both stay readable
        styles.append(f"  style {node_id(top.id)} fill:{colour}40,stroke:{colour},stroke-width:3px")
        for c in model.children.get(top.id, []):
            inner = "".join(f"<br/><small>{label(g)}</small>" for g in model.children.get(c.id, []))
            lines.append(f'  {node_id(c.id)}["{label(c)}{inner}"]')
            lines.append(f"  {node_id(top.id)} --> {node_id(c.id)}")
            styles.append(f"  style {node_id(c.id)} fill:{colour}14,stroke:{colour},stroke-width:1.5px")
        direct = model.direct_methods(top.id)
        if direct and model.children.get(top.id):
            nid = node_id(top.id) + "_direct"
            lines.append(f'  {nid}["{mermaid_label(f"filed directly · {len(direct)}")}"]')
            lines.append(f"  {node_id(top.id)} -.-> {nid}")
            styles.append(f"  style {nid} fill:none,stroke:{colour},stroke-width:1px,stroke-dasharray:4 3")
    return "\n".join(lines + styles)

