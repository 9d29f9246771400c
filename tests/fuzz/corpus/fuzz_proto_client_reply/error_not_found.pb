
ґ¤шЧЬЃьц^к*&no job 01JDQ7ZZZZ for client alice@lab