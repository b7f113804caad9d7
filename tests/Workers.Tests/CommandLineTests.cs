using SEmigrate.TestSupport;

namespace SEmigrate.Workers.Tests;

public class CommandLineTests
{
    private static readonly Dictionary<string, string> NoEnvironment = [];

    [Fact]
    public async Task Help_lists_every_subcommand_with_a_description()
    {
        var r = await SemigrateProcess.RunAsync(NoEnvironment, "--help");
        Assert.Equal(0, r.ExitCode);
        Assert.Matches(@"\n\s+services\s+\S.+\n", r.Stdout);
        Assert.Matches(@"\n\s+doctor\s+\S.+\n", r.Stdout);
        Assert.Matches(@"\n\s+guest\s+\S.+\n", r.Stdout);
    }

    [Theory]
    [InlineData("doctor")]
    [InlineData("services")]
    [InlineData("services", "up")]
    [InlineData("services", "down")]
    [InlineData("services", "status")]
    [InlineData("guest")]
    [InlineData("guest", "boot")]
    [InlineData("guest", "introspect")]
    public async Task Every_subcommand_has_help(params string[] command)
    {
        var r = await SemigrateProcess.RunAsync(NoEnvironment, [.. command, "--help"]);
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("Description:", r.Stdout, StringComparison.Ordinal);
        Assert.Contains($"semigrate {string.Join(' ', command)}", r.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Version_prints_the_product_version()
    {
        var r = await SemigrateProcess.RunAsync(NoEnvironment, "--version");
        Assert.Equal(0, r.ExitCode);
        Assert.Matches(@"^\d+\.\d+\.\d+", r.Stdout);
    }

    [Fact]
    public async Task An_unknown_command_fails_with_a_message()
    {
        var r = await SemigrateProcess.RunAsync(NoEnvironment, "teleport");
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("teleport", r.Stderr + r.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Services_status_says_both_run_after_up_and_env_prints_the_settings()
    {
        var settings = await ServicesScript.SettingsAsync();
        var status = await SemigrateProcess.RunAsync(NoEnvironment, "services", "status");
        Assert.Equal(0, status.ExitCode);
        Assert.Contains("postgres: running", status.Stderr, StringComparison.Ordinal);
        Assert.Contains("rabbitmq: running", status.Stderr, StringComparison.Ordinal);

        var env = await SemigrateProcess.RunAsync(NoEnvironment, "services", "env");
        Assert.Equal(settings, ServicesScript.ParseSettings(env.Stdout));
    }

    [Fact]
    public async Task A_second_services_up_is_a_no_op()
    {
        await ServicesScript.SettingsAsync();
        var r = await SemigrateProcess.RunAsync(NoEnvironment, "services", "up");
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("postgres: already running", r.Stderr, StringComparison.Ordinal);
        Assert.Contains("rabbitmq: already running", r.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("starting", r.Stderr, StringComparison.Ordinal);
    }
}
