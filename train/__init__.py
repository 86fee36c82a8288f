"""Training, evaluation and publishing of the pneumonia classifier (`python -m train ...`)."""
