"""The review web app (Flask app factory and blueprints)."""
