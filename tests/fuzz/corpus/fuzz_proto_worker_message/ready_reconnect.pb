R²gpu-node-7/gpu1ï›¯Íø¬Ñ‘"microsoft/kosmos-2-patch14-224*@3f1c1a4e2b9d7c6a5e8f0b1d2c3a4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f2h
Advanced Micro Devices, Inc.gfx1100€€€ø_"3602.0 (HSA1.1,LC)*#AMD Accelerated Parallel Processing008B0.1.0J
01JDQ7Z9K3M4N5P6Q7R8S9T0VWJ
01JDQ80000AAAABBBBCCCCDDDD