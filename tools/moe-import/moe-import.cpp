//===- moe-import.cpp - import a model config.json as moe IR --------------===//
//
// Reads a model config.json (moe_stack, mixtral, olmoe, qwen3_moe, loop-lm)
// and prints the moe dialect module for it.
// Diagnostics point into the JSON file (file:line:col) with the offending
// line quoted; the exit status is 1 on any error, and -o leaves no file then.
//
//===----------------------------------------------------------------------===//
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/AsmState.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Support/FileUtilities.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/ToolOutputFile.h"

#include "moe/Dialect/MoE/IR/MoEDialect.h"
#include "moe/Import/ConfigImport.h"

namespace cl = llvm::cl;

static cl::OptionCategory importCategory("moe-import options");

static cl::opt<std::string> inputFilename(cl::Positional,
                                          cl::desc("<config.json>"),
                                          cl::init("-"),
                                          cl::cat(importCategory));

static cl::opt<std::string> outputFilename(
    "o", cl::desc("Output file for the module ('-' for stdout, the default)"),
    cl::value_desc("filename"), cl::init("-"), cl::cat(importCategory));

int main(int argc, char **argv) {
  llvm::InitLLVM init(argc, argv);
  mlir::registerAsmPrinterCLOptions();
  // libLLVM registers hundreds of codegen options; --help-hidden still lists
  // them and the --mlir-print-* ones.
  cl::HideUnrelatedOptions(importCategory);
  cl::ParseCommandLineOptions(
      argc, argv,
      "moe model importer\n\n"
      "Reads a Hugging Face style config.json (from stdin when no file is "
      "given) and\nwrites the moe dialect module: one moe.weight per "
      "safetensors tensor and a\n@forward function. Supported model_type "
      "values: moe_stack (its layers run\nin a moe.loop), mixtral, olmoe and "
      "qwen3_moe (tokens and positions to logits,\none KV cache slot per "
      "layer), and loop-lm / loop-moe (LoopLM checkpoints).\n");

  std::string errorMessage;
  std::unique_ptr<llvm::MemoryBuffer> input =
      mlir::openInputFile(inputFilename, &errorMessage);
  if (!input) {
    llvm::errs() << "error: " << errorMessage << "\n";
    return 1;
  }
  // Opened before importing so that a failed import also removes an old file.
  std::unique_ptr<llvm::ToolOutputFile> output =
      mlir::openOutputFile(outputFilename, &errorMessage);
  if (!output) {
    llvm::errs() << "error: " << errorMessage << "\n";
    return 1;
  }

  mlir::DialectRegistry registry;
  registry.insert<mlir::moe::MoEDialect, mlir::func::FuncDialect,
                  mlir::arith::ArithDialect>();
  mlir::MLIRContext context(registry, mlir::MLIRContext::Threading::DISABLED);
  llvm::StringRef text = input->getBuffer();
  llvm::StringRef sourceName = input->getBufferIdentifier();
  llvm::SourceMgr sourceMgr;
  sourceMgr.AddNewSourceBuffer(std::move(input), llvm::SMLoc());
  mlir::SourceMgrDiagnosticHandler diagnostics(sourceMgr, &context);

  mlir::FailureOr<mlir::OwningOpRef<mlir::ModuleOp>> module =
      mlir::moe::importModelConfig(text, sourceName, &context);
  if (failed(module))
    return 1;
  module->get().print(output->os());
  output->keep();
  return 0;
}
