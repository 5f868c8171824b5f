"""Fine-Tune Lab's logic: everything but the pages. Never imports streamlit."""
