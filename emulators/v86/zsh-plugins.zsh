# pyapptron: zsh-autosuggestions and zsh-syntax-highlighting, arranged so that a key shows
# at once in an emulated machine. Sourced by ~/.zshrc; the same on every image.
#
# Out of the box, every key ran both plugins in full before zle drew it: highlighting
# parses the whole line (about 5 ms of emulated time per character) and, while the first
# word is no command yet, forks `type -w` (which looks the word up in every $PATH
# directory); suggestions fork a subshell for the history search. Here a key inserts its
# character and shortens a suggestion typed along; the rest waits for a pause in the
# typing (_pyapptron_pause): then this shell fetches a new suggestion (a search of its
# history, in memory) and a child shell works out the colours, which this one puts on
# when they arrive unless the line changed meanwhile. No fork and no file lookup per key.

# -- zsh-autosuggestions ---------------------------------------------------------------
# Asynchronous, though not through the plugin's own async mode (a subshell per key):
# _zsh_autosuggest_async_request is replaced below.
typeset -g ZSH_AUTOSUGGEST_USE_ASYNC=
# Wrap the widgets once, at the first prompt, not again at every prompt (a subshell and a
# loop over every widget each time); nothing here adds widgets later.
typeset -g ZSH_AUTOSUGGEST_MANUAL_REBIND=1
source /usr/share/zsh-autosuggestions/zsh-autosuggestions.zsh

# -- zsh-syntax-highlighting -------------------------------------------------------------
# A line longer than this keeps the colours it had (a child would take seconds on it).
typeset -g ZSH_HIGHLIGHT_MAXLENGTH=512
source /usr/share/zsh-syntax-highlighting/zsh-syntax-highlighting.zsh

# The type of a command word, as upstream's (0.7.1) but with no subshell: upstream runs
# `type -w` in one, a fork on every key while a word is no command yet, and forks again
# to read its answer when it finds a program.
if [[ $ZSH_HIGHLIGHT_VERSION == 0.7.1* ]] && (( $+functions[_zsh_highlight_main__type] )); then
  _zsh_highlight_main__type() {
    integer -r aliases_allowed=${2-1}
    integer may_cache=1
    REPLY=$_zsh_highlight_main__command_type_cache[(e)$1]
    [[ -n $REPLY ]] && return
    if (( $#options_to_set )); then
      setopt localoptions $options_to_set
    fi
    (( $+aliases[(e)$1] )) && may_cache=0
    if (( $+aliases[(e)$1] )) && (( aliases_allowed )); then
      REPLY=alias
    elif [[ $1 == *.* && -n ${1%.*} ]] && (( $+saliases[(e)${1##*.}] )); then
      REPLY='suffix alias'
    elif (( $reswords[(Ie)$1] )); then
      REPLY=reserved
    elif (( $+functions[(e)$1] )); then
      REPLY=function
    elif (( $+builtins[(e)$1] )); then
      REPLY=builtin
    elif (( $+commands[(e)$1] )); then
      REPLY=command
    elif builtin type -w -- "$1" >/dev/null 2>&1; then
      REPLY=command   # on $PATH since the command table was filled, or a path to a program
    else
      REPLY=none
    fi
    (( may_cache )) && _zsh_highlight_main__command_type_cache[(e)$1]=$REPLY
    [[ -n $REPLY ]]
  }
fi

# -- after the key -----------------------------------------------------------------------
# A zle -F handler on a descriptor that is always readable (/dev/null) runs once zle has
# drawn the key and waits for the next; it first waits for a pause, and any key in it
# goes first (and schedules the handler again).
zmodload zsh/zselect zsh/system
typeset -gi _pyapptron_pause=15   # hundredths of a second without a key
typeset -gi _pyapptron_paint_fd=0 _pyapptron_fetch=0 _pyapptron_hashed=0
typeset -g _pyapptron_hashed_path=

_pyapptron_schedule() {
  (( _pyapptron_paint_fd )) && return
  exec {_pyapptron_paint_fd}</dev/null
  zle -F -w $_pyapptron_paint_fd _pyapptron-paint
}
_pyapptron_cancel() {
  (( _pyapptron_paint_fd )) || return 0
  zle -F $_pyapptron_paint_fd
  exec {_pyapptron_paint_fd}<&-
  _pyapptron_paint_fd=0
}
_pyapptron-paint() {
  _pyapptron_cancel
  (( PENDING || KEYS_QUEUED_COUNT )) && return
  # (a widget's standard input is not the terminal: watch the terminal itself)
  if (( _pyapptron_pause )) && [[ -n $TTY ]]; then
    local -i tty_fd typed=0
    if exec {tty_fd}<$TTY; then
      zselect -t $_pyapptron_pause -r $tty_fd 2>/dev/null && typed=1
      exec {tty_fd}<&-
      (( typed )) && return
    fi
  fi
  if (( ! _pyapptron_hashed )); then
    # The command table, filled at an idle prompt rather than on a first key.
    hash -f
    _pyapptron_hashed=1 _pyapptron_hashed_path="$path"
  fi
  if (( _pyapptron_fetch )); then
    _pyapptron_fetch=0
    if (( $#BUFFER && ! ${+_ZSH_AUTOSUGGEST_DISABLED} )) &&
       (( $+functions[_zsh_autosuggest_fetch_suggestion] )); then
      local suggestion
      _zsh_autosuggest_fetch_suggestion "$BUFFER"
      _zsh_autosuggest_highlight_reset
      _zsh_autosuggest_suggest "$suggestion"
      _zsh_autosuggest_highlight_apply
      zle -R
    fi
  fi
  (( $+functions[_pyapptron_highlight_now] )) && _pyapptron_highlight_start
}
zle -N _pyapptron-paint   # (autosuggestions leaves widgets named _* alone)

# The colours, from a child: a fork costs this shell a few ms, the child's work none.
typeset -gi _pyapptron_hl_fd=0 _pyapptron_hl_pid=0
typeset -g _pyapptron_hl_buffer= _pyapptron_hl_data=
_pyapptron_highlight_start() {
  _pyapptron_highlight_stop
  if [[ -z $BUFFER ]]; then
    region_highlight=()
    return
  fi
  _pyapptron_hl_buffer=$BUFFER
  exec {_pyapptron_hl_fd}< <(
    print -r -- $sysparams[pid]
    _pyapptron_highlight_now 2>/dev/null
    print -rl -- $region_highlight .
  )
  zle -F -w $_pyapptron_hl_fd _pyapptron-highlighted
}
_pyapptron_highlight_stop() {
  (( _pyapptron_hl_fd )) || return 0
  if (( ! _pyapptron_hl_pid )); then
    local chunk
    sysread -i $_pyapptron_hl_fd -t 0 chunk 2>/dev/null && _pyapptron_hl_data+=$chunk
    [[ $_pyapptron_hl_data == <->$'\n'* ]] && _pyapptron_hl_pid=${_pyapptron_hl_data%%$'\n'*}
  fi
  (( _pyapptron_hl_pid )) && kill -TERM $_pyapptron_hl_pid 2>/dev/null
  zle -F $_pyapptron_hl_fd 2>/dev/null
  exec {_pyapptron_hl_fd}<&-
  _pyapptron_hl_fd=0 _pyapptron_hl_pid=0 _pyapptron_hl_data=
}
_pyapptron-highlighted() {
  local chunk
  sysread -i $_pyapptron_hl_fd -s 65536 chunk
  local -i rc=$?
  _pyapptron_hl_data+=$chunk
  local -a lines
  lines=( "${(@f)${_pyapptron_hl_data%$'\n'}}" )
  if [[ $lines[-1] != . ]]; then
    (( rc == 0 )) || _pyapptron_highlight_stop   # (the child ended without an answer)
    return
  fi
  _pyapptron_hl_pid=0   # (done: nothing to stop)
  local buffer=$_pyapptron_hl_buffer
  _pyapptron_highlight_stop
  [[ $BUFFER == $buffer ]] || return
  region_highlight=( "${(@)lines[2,-2]}" )
  if (( $+functions[_zsh_autosuggest_highlight_apply] )); then
    unset _ZSH_AUTOSUGGEST_LAST_HIGHLIGHT
    _zsh_autosuggest_highlight_apply
  fi
  zle -R
}
zle -N _pyapptron-highlighted

# Every widget the highlighting plugin wraps calls _zsh_highlight after it: now that only
# schedules the handler. When the line is accepted nothing more is done: it keeps the
# colours last drawn (upstream highlights it once more then, which would delay the command
# by as long as a child takes).
if (( $+functions[_zsh_highlight] )); then
  functions[_pyapptron_highlight_now]=$functions[_zsh_highlight]
  _zsh_highlight() {
    local ret=$?
    _pyapptron_highlight_stop
    if [[ $WIDGET == zle-line-finish ]]; then
      _pyapptron_cancel
      _pyapptron_fetch=0
    else
      _pyapptron_schedule
    fi
    return $ret
  }
fi
# The suggestions plugin calls this, in its async mode, for a new suggestion.
if (( $+functions[_zsh_autosuggest_async_request] )); then
  _zsh_autosuggest_async_request() {
    _pyapptron_fetch=1
    _pyapptron_schedule
  }
fi

# Typing a character, the widget behind most keys: one function instead of both plugins'
# wrappers around self-insert (the same effect, a third of the emulated time). Bound at the
# first prompt, after the suggestions plugin has wrapped the widgets.
_pyapptron-self-insert() {
  local orig_buffer=$BUFFER orig_post=$POSTDISPLAY
  zle .self-insert
  if [[ -n $orig_post && $BUFFER == $orig_buffer* && $orig_post == ${BUFFER:$#orig_buffer}* ]]; then
    POSTDISPLAY=${orig_post:$(( $#BUFFER - $#orig_buffer ))}   # typed along the suggestion
  else
    unset POSTDISPLAY
    _pyapptron_fetch=1
  fi
  _zsh_autosuggest_highlight_reset
  _zsh_autosuggest_highlight_apply
  _pyapptron_highlight_stop
  _pyapptron_schedule
}
_pyapptron_bind_self_insert() {
  add-zsh-hook -d precmd _pyapptron_bind_self_insert
  (( $+functions[_zsh_autosuggest_highlight_apply] && $+functions[_pyapptron_highlight_now] )) &&
    zle -N self-insert _pyapptron-self-insert
}

# At each prompt: when $PATH changed (zsh then empties its command table), fill the table
# again while idle; and run the handler once (the empty line; the table).
_pyapptron_precmd() {
  [[ "$path" == "$_pyapptron_hashed_path" ]] || _pyapptron_hashed=0
  _pyapptron_schedule
}
autoload -Uz add-zsh-hook
add-zsh-hook precmd _pyapptron_bind_self_insert
add-zsh-hook precmd _pyapptron_precmd
add-zsh-hook preexec _pyapptron_cancel
add-zsh-hook preexec _pyapptron_highlight_stop
