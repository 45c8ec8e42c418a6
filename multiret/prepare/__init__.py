"""`multiret prepare kilt`: raw KILT files → a folder that `data=kilt` trains on."""
