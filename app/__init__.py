"""The browser app: a thin gradio shell over ``wilss`` (see docs/app.md). ``launch.py`` starts it."""
