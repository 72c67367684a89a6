"""placeholder"""
def render_html(result): return "<html></html>"
def render_markdown(result): return ""
