"""`blindkey ui`: the local page where approvers answer and people look (issue 29)."""
