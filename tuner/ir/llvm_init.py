"""llvmlite, initialised once for the native target (llvmlite >= 0.45 refuses `initialize()`)."""

import llvmlite.binding as llvm

llvm.initialize_native_target()
llvm.initialize_native_asmprinter()
