"""Host-side composition of the stages: the quality table and the one-command demo."""
