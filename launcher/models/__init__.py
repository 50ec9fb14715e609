"""Model and tokenizer loading, and the builtin tiny models ftl can create offline."""
