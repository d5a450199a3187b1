from pages.routing import route_through_app

route_through_app()  # a page file Streamlit ran alone (legacy pages/ mode) reruns through app.py
