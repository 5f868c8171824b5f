"""The presentation side: Streamlit pieces the pages share (widgets) and the altair charts (pure functions)."""
