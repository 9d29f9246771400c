
batch-2024-11-26/000123,file:///srv/shared/images/carnaby_street.jpg*B
@<grounding> Question: What is special about this street? Answer::h
microsoft/kosmos-2-patch14-224@3f1c1a4e2b9d7c6a5e8f0b1d2c3a4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f€€€€ @ìÿÿÿÿÿÿÿÿH€€ð»¶2PZstreet-scenes