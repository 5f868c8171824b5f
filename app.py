"""Fine-Tune Lab: page config and navigation. Everything else lives in pages/ (thin) and core/ (logic)."""
import streamlit as st

st.set_page_config(page_title="Fine-Tune Lab", page_icon=":material/model_training:", layout="wide")

pages = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
]
st.navigation(pages).run()
