"""The VM lab: box builder (boxes.py); the tests import it as labs.boxes."""
