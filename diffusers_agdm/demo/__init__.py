"""The Gradio demo (`agdm demo`, or `app.py` of a Hugging Face Space): attack a digit, watch each defense purify it."""
