"""Home: what Fine-Tune Lab does, in the order a person does it."""
import streamlit as st

st.title("Fine-Tune Lab")
st.write(
    "Teach a pretrained image classifier your own categories, in the browser, without writing code. "
    "Your images stay on this machine."
)

STEPS = [
    ("Upload", ":material/folder:", "Give a folder with one subfolder per class (or a zip, or a folder on the "
     "server). The app checks every image and shows counts, thumbnails and any problems it found."),
    ("Model", ":material/neurology:", "Pick a pretrained backbone and how much of it to fine-tune: everything, "
     "only the last layers, or just a new head on frozen features."),
    ("Train", ":material/model_training:", "Set augmentation and hyperparameters, then start. Loss and accuracy "
     "curves, progress and the confusion matrix update live; you can stop at any time or reload the page."),
    ("Results", ":material/insights:", "See per-class precision and recall, the images it gets wrong and why, "
     "and try the model on new images."),
    ("Download", ":material/download:", "Take the weights with everything needed to use them: classes, "
     "preprocessing and a few lines of plain PyTorch to load them."),
]
for number, (title, icon, text) in enumerate(STEPS, 1):
    with st.container(border=True):
        st.markdown(f"#### {icon} {number}. {title}")
        st.write(text)

st.caption("Headless: `python -m core inspect DATA` and `python -m core train DATA --out RUN` run the same engine.")
