"""What an erasure leaves behind and takes away: certificates (:mod:`.certificates`), the purge of
older copies that held the erased records (:mod:`.purge`), and what may leave the machine at all
(:mod:`.safe`, the privacy allow-list)."""
