"""What a run shows a person: the markdown run report (:mod:`.run_report`) and its plots (:mod:`.plots`)."""
