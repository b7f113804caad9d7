using System.Runtime.InteropServices;

namespace SEmigrate.Workers.Commands;

/// <summary>What Ctrl+C means while `semigrate migrate` follows a migration: not death mid-way (pages
/// half sent, a compensation cut short), but a question. The first Ctrl+C says what the next keys do;
/// a second one within 5 s cancels the migration (every destination releases what it got, the VM stays
/// at the source), after which the command waits for that to finish. With Temporal, 'd' and Enter
/// detaches instead: the workflow goes on without this process. SIGTERM cancels at once.</summary>
internal sealed class Interruption : IDisposable
{
    private static readonly TimeSpan Window = TimeSpan.FromSeconds(5);
    private readonly CancellationTokenSource cancel = new();
    private readonly CancellationTokenSource detach = new();
    private readonly PosixSignalRegistration sigint;
    private readonly PosixSignalRegistration sigterm;
    private readonly bool canDetach;
    private readonly Action<string> say;
    private DateTime asked = DateTime.MinValue;
    private int reading;

    public Interruption(bool canDetach, Action<string> say)
    {
        (this.canDetach, this.say) = (canDetach, say);
        sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnInterrupt);
        sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c =>
        {
            c.Cancel = true;
            Cancel("terminated");
        });
    }

    /// <summary>Cancelled when the operator cancels the migration.</summary>
    public CancellationToken Cancelled => cancel.Token;

    /// <summary>Cancelled when the operator leaves the migration running (Temporal only).</summary>
    public CancellationToken Detached => detach.Token;

    private void OnInterrupt(PosixSignalContext c)
    {
        c.Cancel = true; // never die mid-way
        if (cancel.IsCancellationRequested)
        {
            say("already cancelling: waiting until every destination has released the VM's pages");
            return;
        }
        if (DateTime.UtcNow - asked < Window)
        {
            Cancel("Ctrl+C");
            return;
        }
        asked = DateTime.UtcNow;
        say(canDetach
            ? "Ctrl+C: press Ctrl+C again within 5 s to cancel the migration (every destination releases its pages, the VM stays at the source), or type d and Enter to detach (the workflow goes on)"
            : "Ctrl+C: press Ctrl+C again within 5 s to cancel the migration (every destination releases its pages, the VM stays at the source); "
                + "the embedded engine runs it in this process, so it cannot be left to run on its own");
        if (canDetach && !Console.IsInputRedirected && Interlocked.Exchange(ref reading, 1) == 0)
        {
            _ = Task.Run(() =>
            {
                while (Console.ReadLine() is { } line)
                {
                    if (line.Trim().Equals("d", StringComparison.OrdinalIgnoreCase))
                    {
                        detach.Cancel();
                        return;
                    }
                }
            });
        }
    }

    private void Cancel(string why)
    {
        say($"{why}: cancelling the migration; waiting until every destination has released the VM's pages");
        cancel.Cancel();
    }

    public void Dispose()
    {
        sigint.Dispose();
        sigterm.Dispose();
        cancel.Dispose();
        detach.Dispose();
    }
}
