#include "moert/CpuKernels.h"
#include "gtest/gtest.h"
