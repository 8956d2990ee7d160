"""The relay: directory of sealed public-key records and store-and-forward mailboxes."""
