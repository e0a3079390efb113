"""The garbage collector: dependents of a deleted owner go too (Background, Foreground), or are
orphaned on request (DESIGN §2 ownerReferences, §5)."""
