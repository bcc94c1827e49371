# moe_add_model(<target> MODEL <model.mlir|config.json> NAME <symbol>
#               [OPT_LEVEL <0|1>] [DEVICE <cpu|cuda>] [CHIPS <sm_XY,...>])
#
# Compiles MODEL with moe-compile into <symbol>.o and <symbol>.h in the
# current binary directory, adds the object to <target>, puts the header on
# its include path and links the runtime. The application loads the model
# with moert_model_load(ctx, &<symbol>, weights, &model), on a context of the
# same device. DEVICE cuda (needs the CUDA toolkit at build time, not a GPU)
# embeds the kernels for CHIPS (default sm_90a,sm_80).
function(moe_add_model target)
  cmake_parse_arguments(ARG "" "MODEL;NAME;OPT_LEVEL;DEVICE;CHIPS" "" ${ARGN})
  if(NOT ARG_MODEL OR NOT ARG_NAME)
    message(FATAL_ERROR "moe_add_model(${target}): MODEL and NAME are required")
  endif()
  if(NOT DEFINED ARG_OPT_LEVEL)
    set(ARG_OPT_LEVEL 1)
  endif()
  if(NOT DEFINED ARG_DEVICE)
    set(ARG_DEVICE cpu)
  endif()
  if(NOT ARG_DEVICE MATCHES "^(cpu|cuda)$")
    message(FATAL_ERROR "moe_add_model(${target}): DEVICE must be cpu or cuda")
  endif()
  set(chips)
  if(ARG_CHIPS)
    if(NOT ARG_DEVICE STREQUAL "cuda")
      message(FATAL_ERROR "moe_add_model(${target}): CHIPS needs DEVICE cuda")
    endif()
    set(chips --chip ${ARG_CHIPS})
  endif()
  get_filename_component(model "${ARG_MODEL}" ABSOLUTE)
  set(object "${CMAKE_CURRENT_BINARY_DIR}/${ARG_NAME}.o")
  set(header "${CMAKE_CURRENT_BINARY_DIR}/${ARG_NAME}.h")
  add_custom_command(
    OUTPUT "${object}" "${header}"
    COMMAND "${MOE_COMPILE_EXECUTABLE}" "${model}" --target ${ARG_DEVICE}
            ${chips} --opt-level=${ARG_OPT_LEVEL} --name ${ARG_NAME}
            -o "${object}" --header "${header}"
    DEPENDS "${model}" "${MOE_COMPILE_EXECUTABLE}"
    COMMENT "Compiling moe model ${ARG_NAME}"
    VERBATIM)
  target_sources(${target} PRIVATE "${object}" "${header}")
  target_include_directories(${target} PRIVATE "${CMAKE_CURRENT_BINARY_DIR}")
  target_link_libraries(${target} PRIVATE MoE::MoERuntime MoE::MoECpuKernels)
endfunction()
