"""The app's helpers, testable without Gradio: ``session`` (state and runs), ``form`` (widgets <-> Recipe),
``views`` (what is shown). ``app.py`` wires them to widgets; nothing here imports gradio.
"""
