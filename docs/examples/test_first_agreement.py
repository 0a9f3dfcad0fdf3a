# test_first_agreement.py
from ttc_first_agreement import FirstAgreement, FirstAgreementConfig

from ttc.testing import StrategyConformance


class TestFirstAgreement(StrategyConformance):
    strategy = FirstAgreement(FirstAgreementConfig())
