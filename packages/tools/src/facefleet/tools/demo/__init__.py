"""The main job on the embedded default: a gallery in, faces and people out, and a report."""
