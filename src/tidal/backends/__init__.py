"""Where instances run. ``base.Backend`` is the seam; ``local`` runs processes on this host."""
