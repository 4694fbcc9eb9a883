"""The shifted test data of ``bcsub local-score``: ``suite`` (which variants a run scores), ``corruptions``
(MedMNIST-C-style, severities 1..5), ``an2dl`` (the AN2DL-style shift, strengths 1..3), ``ops`` (the
low-level image code they share)."""
