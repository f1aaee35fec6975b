"""translate: a client's API served by an upstream that speaks another one."""
