"""Latency budgets: the profile (what each call costs here), the one predictor, the plans a bundle
offers and the one chooser, and the closed loop that keeps a stream of batches inside its budget
(tracker, anytime timeline, stream)."""
