"""Model backends. Each file is one backend; heavy libraries are imported inside it."""
