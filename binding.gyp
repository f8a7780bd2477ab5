{
  "targets": [{
    "target_name": "peftkit",
    "sources": [
      "<!@(node -p \"require('fs').readdirSync('csrc/core').filter(f=>f.endsWith('.cpp')).map(f=>'csrc/core/'+f).join(' ')\")",
      "<!@(node -p \"require('fs').readdirSync('csrc/cpu').filter(f=>f.endsWith('.cpp')&&!/_avx(2|512)\\.cpp$/.test(f)).map(f=>'csrc/cpu/'+f).join(' ')\")",
      "<!@(node -p \"require('fs').readdirSync('csrc/addon').filter(f=>f.endsWith('.cpp')).map(f=>'csrc/addon/'+f).join(' ')\")"
    ],
    "include_dirs": ["<!@(node -p \"require('node-addon-api').include\")", "csrc"],
    "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED", "PEFTKIT_NO_SIMD_KERNELS=1"],
    "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
    "cflags_cc": ["-std=c++17", "-O3", "-fexceptions"],
    "xcode_settings": { "GCC_ENABLE_CPP_EXCEPTIONS": "YES", "CLANG_CXX_LANGUAGE_STANDARD": "c++17" }
  }]
}
