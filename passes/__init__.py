"""rtinfer's passes, one file each."""
